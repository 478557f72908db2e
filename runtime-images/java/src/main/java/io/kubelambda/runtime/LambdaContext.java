package io.kubelambda.runtime;

import com.amazonaws.services.lambda.runtime.Client;
import com.amazonaws.services.lambda.runtime.ClientContext;
import com.amazonaws.services.lambda.runtime.CognitoIdentity;
import com.amazonaws.services.lambda.runtime.Context;
import com.amazonaws.services.lambda.runtime.LambdaLogger;
import com.amazonaws.services.lambda.runtime.LambdaRuntime;
import java.util.Map;

/** The {@link Context} a handler gets: what the Runtime API's headers and the environment say. */
final class LambdaContext implements Context {
    private final String requestId;
    private final long deadlineMs;
    private final String invokedFunctionArn;
    private final CognitoIdentity identity;
    private final ClientContext clientContext;
    private final Env env;

    /** What every invocation of a worker shares: read once from the environment. */
    static final class Env {
        final String functionName = System.getenv().getOrDefault("AWS_LAMBDA_FUNCTION_NAME", "");
        final String functionVersion = System.getenv().getOrDefault("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST");
        final String logGroupName = System.getenv().getOrDefault("AWS_LAMBDA_LOG_GROUP_NAME", "");
        final String logStreamName = System.getenv().getOrDefault("AWS_LAMBDA_LOG_STREAM_NAME", "");
        final int memoryLimitMb = parseInt(System.getenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"), 128);

        private static int parseInt(String s, int fallback) {
            try {
                return s == null ? fallback : Integer.parseInt(s.trim());
            } catch (NumberFormatException e) {
                return fallback;
            }
        }
    }

    LambdaContext(Env env, String requestId, long deadlineMs, String invokedFunctionArn, String cognitoJson,
            String clientContextJson) {
        this.env = env;
        this.requestId = requestId;
        this.deadlineMs = deadlineMs;
        this.invokedFunctionArn = invokedFunctionArn;
        this.identity = identity(cognitoJson);
        this.clientContext = clientContext(clientContextJson);
    }

    @Override public String getAwsRequestId() { return requestId; }
    @Override public String getLogGroupName() { return env.logGroupName; }
    @Override public String getLogStreamName() { return env.logStreamName; }
    @Override public String getFunctionName() { return env.functionName; }
    @Override public String getFunctionVersion() { return env.functionVersion; }
    @Override public String getInvokedFunctionArn() { return invokedFunctionArn; }
    @Override public CognitoIdentity getIdentity() { return identity; }
    @Override public ClientContext getClientContext() { return clientContext; }
    @Override public int getMemoryLimitInMB() { return env.memoryLimitMb; }
    @Override public LambdaLogger getLogger() { return LambdaRuntime.getLogger(); }

    @Override
    public int getRemainingTimeInMillis() {
        long left = deadlineMs - System.currentTimeMillis();
        return (int) Math.max(0, Math.min(Integer.MAX_VALUE, left));
    }

    private static Map<?, ?> object(String json) {
        if (json == null || json.isBlank()) {
            return null;
        }
        try {
            Object tree = Json.parse(json);
            return tree instanceof Map ? (Map<?, ?>) tree : null;
        } catch (Json.ParseException e) {
            return null; // the agent checks these headers; a bad one only loses the context field
        }
    }

    private static String str(Map<?, ?> m, String key) {
        Object v = m == null ? null : m.get(key);
        return v == null ? null : v.toString();
    }

    @SuppressWarnings("unchecked")
    private static Map<String, String> strings(Object v) {
        if (!(v instanceof Map)) {
            return null;
        }
        Map<String, String> out = new java.util.LinkedHashMap<>();
        ((Map<String, Object>) v).forEach((k, val) -> out.put(k, val == null ? null : val.toString()));
        return out;
    }

    /** Null without a Cognito identity, as with AWS's Java runtime client. */
    private static CognitoIdentity identity(String json) {
        Map<?, ?> m = object(json);
        if (m == null) {
            return null;
        }
        String id = str(m, "cognitoIdentityId");
        String pool = str(m, "cognitoIdentityPoolId");
        return new CognitoIdentity() {
            @Override public String getIdentityId() { return id; }
            @Override public String getIdentityPoolId() { return pool; }
        };
    }

    private static ClientContext clientContext(String json) {
        Map<?, ?> m = object(json);
        if (m == null) {
            return null;
        }
        Map<?, ?> c = m.get("client") instanceof Map ? (Map<?, ?>) m.get("client") : null;
        Client client = c == null ? null : new Client() {
            @Override public String getInstallationId() { return str(c, "installation_id"); }
            @Override public String getAppTitle() { return str(c, "app_title"); }
            @Override public String getAppVersionName() { return str(c, "app_version_name"); }
            @Override public String getAppVersionCode() { return str(c, "app_version_code"); }
            @Override public String getAppPackageName() { return str(c, "app_package_name"); }
        };
        Map<String, String> custom = strings(m.get("custom"));
        Map<String, String> environment = strings(m.get("env"));
        return new ClientContext() {
            @Override public Client getClient() { return client; }
            @Override public Map<String, String> getCustom() { return custom; }
            @Override public Map<String, String> getEnvironment() { return environment; }
        };
    }
}
