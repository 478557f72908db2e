package io.kubelambda.runtime;

import com.amazonaws.services.lambda.runtime.LambdaLogger;
import com.amazonaws.services.lambda.runtime.LambdaRuntime;
import java.io.PrintStream;
import java.lang.reflect.Field;
import java.nio.charset.StandardCharsets;

/**
 * The {@link LambdaLogger} of {@code context.getLogger()} and {@code LambdaRuntime.getLogger()}: one call, one
 * line. aws-lambda-java-core's default prints without a newline (Lambda frames each call as its own log event);
 * the agent relays output line by line, so a call that does not end a line ends it here.
 */
final class LineLogger implements LambdaLogger {
    private final PrintStream out;

    LineLogger(PrintStream out) {
        this.out = out;
    }

    @Override
    public void log(String message) {
        String text = message == null ? "null" : message;
        synchronized (out) {
            out.print(text.endsWith("\n") ? text : text + "\n");
            out.flush();
        }
    }

    @Override
    public void log(byte[] message) {
        log(new String(message, StandardCharsets.UTF_8));
    }

    /** Makes this the logger LambdaRuntime hands out (its field is private: set as AWS's own client does). */
    static void install(PrintStream out) {
        try {
            Field f = LambdaRuntime.class.getDeclaredField("logger");
            f.setAccessible(true);
            f.set(null, new LineLogger(out));
        } catch (ReflectiveOperationException | RuntimeException e) {
            System.err.println("kubelambda java runtime: kept aws-lambda-java-core's logger: " + e);
        }
    }
}
