package example;

import com.amazonaws.services.lambda.runtime.Context;
import com.amazonaws.services.lambda.runtime.RequestHandler;
import java.util.LinkedHashMap;
import java.util.Map;

/** Lambda's Java handler: a RequestHandler of the event (bound from JSON) and the context. */
public class Handler implements RequestHandler<Map<String, Object>, Map<String, Object>> {
    @Override
    public Map<String, Object> handleRequest(Map<String, Object> event, Context context) {
        Object name = event == null ? null : event.get("name");
        if (name == null) {
            name = "world";
        }
        String greeting = System.getenv().getOrDefault("GREETING", "Hello");
        context.getLogger().log("Greeting " + name);
        Map<String, Object> response = new LinkedHashMap<>();
        response.put("message", greeting + ", " + name + "!");
        response.put("requestId", context.getAwsRequestId());
        return response;
    }
}
