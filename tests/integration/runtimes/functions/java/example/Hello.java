package example;

import com.amazonaws.services.lambda.runtime.Context;
import com.amazonaws.services.lambda.runtime.LambdaLogger;
import com.amazonaws.services.lambda.runtime.RequestHandler;
import java.util.List;

/** A RequestHandler with bean input and output, written the way aws-lambda-java-core's users write them. */
public class Hello implements RequestHandler<Hello.Request, Hello.Response> {
    public static class Request {
        private String name;
        private int count;
        private List<String> tags;
        private Address address;

        public String getName() { return name; }
        public void setName(String name) { this.name = name; }
        public int getCount() { return count; }
        public void setCount(int count) { this.count = count; }
        public List<String> getTags() { return tags; }
        public void setTags(List<String> tags) { this.tags = tags; }
        public Address getAddress() { return address; }
        public void setAddress(Address address) { this.address = address; }
    }

    public static class Address {
        public String city;
        public String zip;
    }

    public static class Response {
        private final String message;
        private final int count;
        private final boolean tagged;
        private final String city;

        Response(String message, int count, boolean tagged, String city) {
            this.message = message;
            this.count = count;
            this.tagged = tagged;
            this.city = city;
        }

        public String getMessage() { return message; }
        public int getCount() { return count; }
        public boolean isTagged() { return tagged; }
        public String getCity() { return city; }
    }

    @Override
    public Response handleRequest(Request input, Context context) {
        LambdaLogger logger = context.getLogger();
        logger.log("hello handler called for " + input.getName());
        boolean tagged = input.getTags() != null && !input.getTags().isEmpty();
        String city = input.getAddress() == null ? null : input.getAddress().city;
        return new Response("Hello, " + input.getName() + "!", input.getCount() + 1, tagged, city);
    }
}
