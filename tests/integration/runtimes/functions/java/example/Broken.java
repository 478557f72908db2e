package example;

import com.amazonaws.services.lambda.runtime.Context;
import com.amazonaws.services.lambda.runtime.RequestHandler;

/** Its static initializer fails: the init error answers every invoke. */
public class Broken implements RequestHandler<Object, Object> {
    static {
        if (System.getenv("LAMBDA_TASK_ROOT") != null) {
            throw new IllegalStateException("cannot start");
        }
    }

    @Override
    public Object handleRequest(Object input, Context context) {
        return input;
    }
}
