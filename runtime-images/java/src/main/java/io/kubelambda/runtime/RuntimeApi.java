package io.kubelambda.runtime;

import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;

/** The Lambda Runtime API (2018-06-01) over java.net.http, one kept-alive HTTP/1.1 connection. */
final class RuntimeApi {
    static final String ERROR_CONTENT_TYPE = "application/vnd.aws.lambda.error+json";

    /** One event from {@code GET /runtime/invocation/next}. */
    static final class Invocation {
        final String requestId;
        final long deadlineMs;
        final String invokedFunctionArn;
        final String traceId;
        final String clientContext;
        final String cognitoIdentity;
        final byte[] event;

        Invocation(HttpResponse<byte[]> r) {
            this.requestId = r.headers().firstValue("Lambda-Runtime-Aws-Request-Id").orElse("");
            this.deadlineMs = r.headers().firstValue("Lambda-Runtime-Deadline-Ms").map(RuntimeApi::parseLong)
                    .orElse(System.currentTimeMillis() + 3000);
            this.invokedFunctionArn = r.headers().firstValue("Lambda-Runtime-Invoked-Function-Arn").orElse("");
            this.traceId = r.headers().firstValue("Lambda-Runtime-Trace-Id").orElse(null);
            this.clientContext = r.headers().firstValue("Lambda-Runtime-Client-Context").orElse(null);
            this.cognitoIdentity = r.headers().firstValue("Lambda-Runtime-Cognito-Identity").orElse(null);
            this.event = r.body();
        }
    }

    private final HttpClient http;
    private final String base;

    RuntimeApi(String address) {
        // One platform thread, no connection pool surprises: the Runtime API is a loopback HTTP/1.1 server.
        this.http = HttpClient.newBuilder()
                .version(HttpClient.Version.HTTP_1_1)
                .connectTimeout(Duration.ofSeconds(10))
                .executor(Runnable::run)
                .build();
        this.base = "http://" + address + "/2018-06-01/runtime";
    }

    private static long parseLong(String s) {
        try {
            return Long.parseLong(s.trim());
        } catch (NumberFormatException e) {
            return System.currentTimeMillis() + 3000;
        }
    }

    Invocation next() throws IOException, InterruptedException {
        HttpRequest req = HttpRequest.newBuilder(URI.create(base + "/invocation/next")).GET().build();
        HttpResponse<byte[]> r = http.send(req, HttpResponse.BodyHandlers.ofByteArray());
        if (r.statusCode() != 200) {
            throw new IOException("GET /runtime/invocation/next answered " + r.statusCode() + ": "
                    + new String(r.body(), StandardCharsets.UTF_8));
        }
        return new Invocation(r);
    }

    /** Returns the status; 413 means the response was over the limit (the agent fails the invocation). */
    int response(String requestId, byte[] body) throws IOException, InterruptedException {
        return post("/invocation/" + requestId + "/response", body, "application/json", null);
    }

    int error(String requestId, String errorType, byte[] errorJson) throws IOException, InterruptedException {
        return post("/invocation/" + requestId + "/error", errorJson, ERROR_CONTENT_TYPE, errorType);
    }

    int initError(String errorType, byte[] errorJson) throws IOException, InterruptedException {
        return post("/init/error", errorJson, ERROR_CONTENT_TYPE, errorType);
    }

    private int post(String path, byte[] body, String contentType, String errorType)
            throws IOException, InterruptedException {
        HttpRequest.Builder b = HttpRequest.newBuilder(URI.create(base + path))
                .header("Content-Type", contentType)
                .POST(HttpRequest.BodyPublishers.ofByteArray(body));
        if (errorType != null) {
            b.header("Lambda-Runtime-Function-Error-Type", errorType);
        }
        return http.send(b.build(), HttpResponse.BodyHandlers.discarding()).statusCode();
    }
}
