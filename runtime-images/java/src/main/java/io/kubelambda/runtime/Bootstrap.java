package io.kubelambda.runtime;

import java.io.File;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.PrintStream;
import java.net.MalformedURLException;
import java.net.URL;
import java.net.URLClassLoader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * kubelambda's Lambda runtime client for Java. The agent starts one per worker as
 * {@code java -cp $LAMBDA_RUNTIME_DIR/lib/* io.kubelambda.runtime.Bootstrap}: it loads {@code $_HANDLER} from
 * {@code $LAMBDA_TASK_ROOT} (classes at its top, jars in its {@code lib/}, as in a Lambda deployment package) and
 * serves events from the Runtime API at {@code $AWS_LAMBDA_RUNTIME_API}, one at a time.
 */
public final class Bootstrap {
    private Bootstrap() {}

    public static void main(String[] args) throws Exception {
        // Line-flushed UTF-8 output: the agent relays it line by line, in order with its own START/END lines.
        System.setOut(new PrintStream(new FileOutputStream(FileDescriptor.out), true, StandardCharsets.UTF_8));
        System.setErr(new PrintStream(new FileOutputStream(FileDescriptor.err), true, StandardCharsets.UTF_8));
        LineLogger.install(System.out);
        String address = System.getenv("AWS_LAMBDA_RUNTIME_API");
        if (address == null || address.isBlank()) {
            System.err.println("kubelambda java runtime: AWS_LAMBDA_RUNTIME_API is not set");
            System.exit(2);
        }
        RuntimeApi api = new RuntimeApi(address);
        String taskRoot = System.getenv().getOrDefault("LAMBDA_TASK_ROOT", "/var/task");
        ClassLoader loader = taskLoader(new File(taskRoot));
        Thread.currentThread().setContextClassLoader(loader);

        Handler handler;
        try {
            handler = Handler.load(args.length > 0 ? args[0] : System.getenv("_HANDLER"), loader);
        } catch (Throwable t) {
            String type = t instanceof Failure ? ((Failure) t).errorType : t.getClass().getName();
            byte[] json = t instanceof Failure ? ((Failure) t).json() : Failure.json(t);
            System.err.println(new String(json, StandardCharsets.UTF_8));
            api.initError(type, json);
            System.exit(1);
            return;
        }
        loop(api, handler);
    }

    private static void loop(RuntimeApi api, Handler handler) throws Exception {
        LambdaContext.Env env = new LambdaContext.Env();
        while (true) {
            RuntimeApi.Invocation inv = api.next();
            if (inv.traceId != null) {
                System.setProperty("com.amazonaws.xray.traceHeader", inv.traceId);
            } else {
                System.clearProperty("com.amazonaws.xray.traceHeader");
            }
            LambdaContext context = new LambdaContext(env, inv.requestId, inv.deadlineMs, inv.invokedFunctionArn,
                    inv.cognitoIdentity, inv.clientContext);
            byte[] response;
            try {
                response = handler.invoke(inv.event, context);
            } catch (Throwable t) {
                String type = t instanceof Failure ? ((Failure) t).errorType : t.getClass().getName();
                byte[] json = t instanceof Failure ? ((Failure) t).json() : Failure.json(t);
                System.err.println(new String(json, StandardCharsets.UTF_8));
                api.error(inv.requestId, type, json);
                if (t instanceof VirtualMachineError) {
                    System.exit(1); // the JVM is not to be trusted after an OutOfMemoryError; the agent starts anew
                }
                continue;
            }
            int status = api.response(inv.requestId, response);
            if (status == 413) {
                System.err.println("kubelambda java runtime: response of " + response.length
                        + " bytes is over the limit");
            }
        }
    }

    /** Classes at the task root, then its lib/*.jar in name order, as Lambda lays out a Java package. */
    static ClassLoader taskLoader(File root) throws MalformedURLException {
        List<URL> urls = new ArrayList<>();
        urls.add(root.toURI().toURL());
        File[] jars = new File(root, "lib").listFiles((dir, name) -> name.endsWith(".jar"));
        if (jars != null) {
            Arrays.sort(jars);
            for (File jar : jars) {
                urls.add(jar.toURI().toURL());
            }
        }
        return new URLClassLoader(urls.toArray(new URL[0]), Bootstrap.class.getClassLoader());
    }
}
