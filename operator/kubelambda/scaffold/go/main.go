// Command bootstrap: a Lambda function in Go with aws-lambda-go, unchanged from what runs on AWS.
package main

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"
)

type Event struct {
	Name string `json:"name"`
}

type Response struct {
	Message   string `json:"message"`
	RequestID string `json:"requestId"`
}

func handle(ctx context.Context, event Event) (Response, error) {
	name := event.Name
	if name == "" {
		name = "world"
	}
	greeting := os.Getenv("GREETING")
	if greeting == "" {
		greeting = "Hello"
	}
	log.Printf("Greeting %s", name)
	lc, _ := lambdacontext.FromContext(ctx)
	requestID := ""
	if lc != nil {
		requestID = lc.AwsRequestID
	}
	return Response{Message: fmt.Sprintf("%s, %s!", greeting, name), RequestID: requestID}, nil
}

func main() {
	lambda.Start(handle)
}
