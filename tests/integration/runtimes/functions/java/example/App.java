package example;

import com.amazonaws.services.lambda.runtime.ClientContext;
import com.amazonaws.services.lambda.runtime.CognitoIdentity;
import com.amazonaws.services.lambda.runtime.Context;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** Handlers the Java runtime tests call through the agent (pkg.Class::method, instance methods). */
public class App {
    public Object echo(Object event, Context context) {
        return event;
    }

    public Map<String, Object> ctx(Map<String, Object> event, Context context) throws InterruptedException {
        int first = context.getRemainingTimeInMillis();
        Thread.sleep(50);
        int second = context.getRemainingTimeInMillis();
        ClientContext cc = context.getClientContext();
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("aws_request_id", context.getAwsRequestId());
        out.put("function_name", context.getFunctionName());
        out.put("function_version", context.getFunctionVersion());
        out.put("invoked_function_arn", context.getInvokedFunctionArn());
        out.put("memory_limit_in_mb", String.valueOf(context.getMemoryLimitInMB()));
        out.put("log_group_name", context.getLogGroupName());
        out.put("log_stream_name", context.getLogStreamName());
        CognitoIdentity identity = context.getIdentity();
        out.put("identity", identity == null ? null : Map.of(
                "cognito_identity_id", identity.getIdentityId(),
                "cognito_identity_pool_id", identity.getIdentityPoolId()));
        if (cc == null) {
            out.put("client_context", null);
        } else {
            Map<String, Object> c = new LinkedHashMap<>();
            c.put("installation_id", cc.getClient().getInstallationId());
            c.put("custom", cc.getCustom());
            c.put("env", cc.getEnvironment());
            out.put("client_context", c);
        }
        out.put("remaining", List.of(first, second));
        out.put("trace_id", System.getProperty("com.amazonaws.xray.traceHeader"));
        Map<String, Object> env = new LinkedHashMap<>();
        for (String key : List.of("AWS_REGION", "AWS_EXECUTION_ENV", "TZ", "GREETING")) {
            env.put(key, System.getenv(key));
        }
        out.put("env", env);
        return out;
    }

    public String fail(Map<String, Object> event, Context context) {
        throw new IllegalArgumentException("boom: " + event.get("why"));
    }

    public Map<String, Object> sleep(Map<String, Object> event) throws InterruptedException {
        Number seconds = (Number) event.get("seconds");
        Thread.sleep((long) (seconds.doubleValue() * 1000));
        return Map.of("slept", seconds);
    }

    public void crash() {
        Runtime.getRuntime().halt(3);
    }

    public String grow(Map<String, Integer> event) {
        return "a".repeat(event.get("size") - 2); // a JSON string of exactly event["size"] bytes
    }

    public String log(Object event, Context context) {
        context.getLogger().log("logged from the handler");
        System.out.println("printed from the handler");
        return "ok";
    }

    public static String staticHello(String name) {
        return "hello " + name;
    }
}
