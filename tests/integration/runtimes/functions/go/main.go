// Command bootstrap: the Go handlers the runtime tests call through the agent, built with aws-lambda-go
// unchanged. One binary serves them all; _HANDLER picks which (Lambda's provided runtimes pass it on too).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"
)

// MyEvent and HandleRequest follow the example of aws-lambda-go's documentation.
type MyEvent struct {
	Name string `json:"name"`
}

func HandleRequest(ctx context.Context, event *MyEvent) (*string, error) {
	if event == nil {
		return nil, fmt.Errorf("received nil event")
	}
	message := fmt.Sprintf("Hello %s!", event.Name)
	return &message, nil
}

func echo(ctx context.Context, event json.RawMessage) (json.RawMessage, error) {
	return event, nil
}

func ctxFields(ctx context.Context, event json.RawMessage) (map[string]any, error) {
	deadline, _ := ctx.Deadline()
	first := time.Until(deadline).Milliseconds()
	time.Sleep(50 * time.Millisecond)
	second := time.Until(deadline).Milliseconds()
	lc, _ := lambdacontext.FromContext(ctx)
	var clientContext any
	if lc.ClientContext.Client.InstallationID != "" || len(lc.ClientContext.Custom) > 0 {
		clientContext = map[string]any{
			"installation_id": lc.ClientContext.Client.InstallationID,
			"custom":          lc.ClientContext.Custom,
			"env":             lc.ClientContext.Env,
		}
	}
	env := map[string]string{}
	for _, k := range []string{"AWS_REGION", "AWS_EXECUTION_ENV", "TZ", "GREETING"} {
		env[k] = os.Getenv(k)
	}
	return map[string]any{
		"aws_request_id":       lc.AwsRequestID,
		"function_name":        lambdacontext.FunctionName,
		"function_version":     lambdacontext.FunctionVersion,
		"invoked_function_arn": lc.InvokedFunctionArn,
		"memory_limit_in_mb":   fmt.Sprint(lambdacontext.MemoryLimitInMB),
		"log_group_name":       lambdacontext.LogGroupName,
		"log_stream_name":      lambdacontext.LogStreamName,
		"identity": map[string]string{
			"cognito_identity_id":      lc.Identity.CognitoIdentityID,
			"cognito_identity_pool_id": lc.Identity.CognitoIdentityPoolID,
		},
		"client_context": clientContext,
		"remaining":      []int64{first, second},
		"trace_id":       ctx.Value("x-amzn-trace-id"),
		"env":            env,
	}, nil
}

type whyEvent struct {
	Why string `json:"why"`
}

func fail(ctx context.Context, event whyEvent) (string, error) {
	return "", errors.New("boom: " + event.Why)
}

type sleepEvent struct {
	Seconds float64 `json:"seconds"`
}

func sleep(ctx context.Context, event sleepEvent) (map[string]float64, error) {
	time.Sleep(time.Duration(event.Seconds * float64(time.Second)))
	return map[string]float64{"slept": event.Seconds}, nil
}

func crash(ctx context.Context) error {
	os.Exit(3)
	return nil
}

type sizeEvent struct {
	Size int `json:"size"`
}

func grow(ctx context.Context, event sizeEvent) (string, error) {
	return strings.Repeat("a", event.Size-2), nil // a JSON string of exactly event.Size bytes
}

func log(ctx context.Context) (string, error) {
	fmt.Println("printed from the handler")
	return "ok", nil
}

func main() {
	handlers := map[string]any{
		"hello": HandleRequest, "echo": echo, "ctx": ctxFields, "fail": fail, "sleep": sleep,
		"crash": crash, "grow": grow, "log": log,
	}
	name := os.Getenv("_HANDLER")
	handler, ok := handlers[name]
	if !ok {
		handler = HandleRequest // "bootstrap", as in Lambda's examples
	}
	lambda.Start(handler)
}
