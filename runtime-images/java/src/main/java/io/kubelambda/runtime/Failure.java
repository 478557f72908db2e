package io.kubelambda.runtime;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.IdentityHashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * An error as Lambda's Java runtime reports it: {@code errorType} is the exception's class name (or a
 * {@code Runtime.*} type for faults of the runtime itself), {@code stackTrace} its frames as
 * {@code StackTraceElement.toString()}, and the chain of causes under {@code cause}.
 */
final class Failure extends RuntimeException {
    private static final long serialVersionUID = 1L;

    final String errorType;

    Failure(String errorType, String message) {
        super(message, null, false, false);
        this.errorType = errorType;
    }

    Failure(String errorType, String message, Throwable cause) {
        super(message, cause, false, false);
        this.errorType = errorType;
    }

    /** The error JSON for a failure of ours: type and message; the cause, when there is one, under "cause". */
    byte[] json() {
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("errorMessage", getMessage());
        out.put("errorType", errorType);
        out.put("stackTrace", List.of());
        if (getCause() != null) {
            out.put("cause", tree(getCause(), new IdentityHashMap<>()));
        }
        return Json.write(out).getBytes(StandardCharsets.UTF_8);
    }

    static byte[] json(Throwable t) {
        return Json.write(tree(t, new IdentityHashMap<>())).getBytes(StandardCharsets.UTF_8);
    }

    /** Frames of this runtime and of reflection, which sit under every handler's own frames. */
    private static boolean isPlumbing(String className) {
        return className.startsWith("io.kubelambda.runtime.") || className.startsWith("jdk.internal.reflect.")
                || className.equals("java.lang.reflect.Method");
    }

    private static Map<String, Object> tree(Throwable t, Map<Throwable, Boolean> seen) {
        seen.put(t, Boolean.TRUE);
        Map<String, Object> out = new LinkedHashMap<>();
        String message = t.getLocalizedMessage();
        if (message != null) {
            out.put("errorMessage", message);
        }
        out.put("errorType", t instanceof Failure ? ((Failure) t).errorType : t.getClass().getName());
        List<Object> frames = new ArrayList<>();
        for (StackTraceElement e : t.getStackTrace()) {
            if (!isPlumbing(e.getClassName())) {
                frames.add(e.toString());
            }
        }
        out.put("stackTrace", frames);
        Throwable cause = t.getCause();
        if (cause != null && !seen.containsKey(cause)) {
            out.put("cause", tree(cause, seen));
        }
        return out;
    }
}
