package io.kubelambda.runtime;

import com.amazonaws.services.lambda.runtime.Context;
import com.amazonaws.services.lambda.runtime.RequestHandler;
import com.amazonaws.services.lambda.runtime.RequestStreamHandler;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.InputStream;
import java.io.OutputStream;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.lang.reflect.ParameterizedType;
import java.lang.reflect.Type;
import java.lang.reflect.TypeVariable;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * The user's handler, loaded from {@code _HANDLER}: {@code pkg.Class::method} or {@code pkg.Class}.
 *
 * <p>{@code pkg.Class} must implement {@link RequestHandler} or {@link RequestStreamHandler}. With a method name,
 * the public method of that name is called with one of the signatures Lambda accepts, tried in this order:
 * {@code (InputStream, OutputStream, Context)}, {@code (InputStream, OutputStream)}, {@code (I, Context)},
 * {@code (I)}, {@code ()}; static methods need no instance, others use the class's no-argument constructor
 * (run once, at init). {@code I} is bound from the event's JSON ({@link Pojo}); the result is written as JSON.
 */
final class Handler {
    private final Object target;
    private final Method method;
    private final Kind kind;
    private final Type inputType;

    private enum Kind { STREAM_CONTEXT, STREAM, POJO_CONTEXT, POJO, NONE }

    private Handler(Object target, Method method, Kind kind, Type inputType) {
        this.target = target;
        this.method = method;
        this.kind = kind;
        this.inputType = inputType;
    }

    /** Loads the handler; every problem is a {@link Failure} (an init error) or the user's own exception. */
    static Handler load(String spec, ClassLoader loader) throws Throwable {
        if (spec == null || spec.isBlank()) {
            throw new Failure("Runtime.MalformedHandlerName", "No handler specified (_HANDLER is empty)");
        }
        String className = spec;
        String methodName = null;
        int sep = spec.indexOf("::");
        if (sep >= 0) {
            className = spec.substring(0, sep);
            methodName = spec.substring(sep + 2);
            if (className.isEmpty() || methodName.isEmpty() || methodName.contains("::")) {
                throw new Failure("Runtime.MalformedHandlerName", "Bad handler '" + spec
                        + "': want package.Class::method or package.Class");
            }
        }
        Class<?> cls;
        try {
            cls = Class.forName(className, true, loader);
        } catch (ClassNotFoundException | NoClassDefFoundError e) {
            throw new Failure("java.lang.ClassNotFoundException", "Class not found: " + className, e);
        } catch (ExceptionInInitializerError e) {
            throw e.getCause() != null ? e.getCause() : e; // the class's static initializer threw
        }
        if (methodName == null) {
            return forInterface(cls, spec);
        }
        Method chosen = pick(cls, methodName);
        if (chosen == null) {
            throw new Failure("java.lang.NoSuchMethodException", "No public method named " + methodName
                    + " with appropriate method signature found on class " + cls.getName());
        }
        Object target = Modifier.isStatic(chosen.getModifiers()) ? null : instantiate(cls);
        return make(target, chosen, cls);
    }

    private static Handler forInterface(Class<?> cls, String spec) throws Throwable {
        if (RequestStreamHandler.class.isAssignableFrom(cls)) {
            Method m = RequestStreamHandler.class.getMethod("handleRequest", InputStream.class, OutputStream.class,
                    Context.class);
            return new Handler(instantiate(cls), m, Kind.STREAM_CONTEXT, null);
        }
        if (RequestHandler.class.isAssignableFrom(cls)) {
            Method m = RequestHandler.class.getMethod("handleRequest", Object.class, Context.class);
            Type input = requestHandlerInput(cls);
            return new Handler(instantiate(cls), m, Kind.POJO_CONTEXT, input);
        }
        throw new Failure("java.lang.NoSuchMethodException", "Class " + cls.getName()
                + " does not implement RequestHandler or RequestStreamHandler; name a method: " + spec + "::method");
    }

    /** The I of RequestHandler<I, O>, resolved through generic superclasses (Object when it stays a variable). */
    static Type requestHandlerInput(Class<?> cls) {
        Map<TypeVariable<?>, Type> bound = new HashMap<>();
        Type found = findInput(cls, bound);
        for (int i = 0; i < 10 && found instanceof TypeVariable; i++) {
            found = bound.get(found);
        }
        return found == null || found instanceof TypeVariable ? Object.class : found;
    }

    private static Type findInput(Type type, Map<TypeVariable<?>, Type> bound) {
        Class<?> raw = Pojo.rawClass(type);
        if (type instanceof ParameterizedType) {
            TypeVariable<?>[] vars = raw.getTypeParameters();
            Type[] args = ((ParameterizedType) type).getActualTypeArguments();
            for (int i = 0; i < vars.length && i < args.length; i++) {
                bound.put(vars[i], args[i]);
            }
            if (raw == RequestHandler.class) {
                return args[0];
            }
        }
        List<Type> parents = new ArrayList<>(List.of(raw.getGenericInterfaces()));
        if (raw.getGenericSuperclass() != null) {
            parents.add(raw.getGenericSuperclass());
        }
        for (Type parent : parents) {
            if (RequestHandler.class.isAssignableFrom(Pojo.rawClass(parent))) {
                Type t = findInput(parent, bound);
                if (t != null) {
                    return t;
                }
            }
        }
        return null;
    }

    private static Method pick(Class<?> cls, String name) {
        List<Method> candidates = new ArrayList<>();
        for (Method m : cls.getMethods()) {
            if (m.getName().equals(name) && !m.isBridge() && !m.isSynthetic()) {
                candidates.add(m);
            }
        }
        candidates.sort(Comparator.comparingInt(Handler::rank));
        return candidates.isEmpty() || rank(candidates.get(0)) == Integer.MAX_VALUE ? null : candidates.get(0);
    }

    /** Lower is preferred; MAX_VALUE is a signature Lambda does not call. */
    private static int rank(Method m) {
        Class<?>[] p = m.getParameterTypes();
        if (p.length == 3 && p[0] == InputStream.class && p[1] == OutputStream.class && p[2] == Context.class) {
            return 0;
        }
        if (p.length == 2 && p[0] == InputStream.class && p[1] == OutputStream.class) {
            return 1;
        }
        if (p.length == 2 && p[1] == Context.class) {
            return 2;
        }
        if (p.length == 1) {
            return 3;
        }
        if (p.length == 0) {
            return 4;
        }
        return Integer.MAX_VALUE;
    }

    private static Handler make(Object target, Method m, Class<?> cls) {
        Class<?>[] p = m.getParameterTypes();
        Type[] g = m.getGenericParameterTypes();
        switch (rank(m)) {
            case 0:
                return new Handler(target, m, Kind.STREAM_CONTEXT, null);
            case 1:
                return new Handler(target, m, Kind.STREAM, null);
            case 2:
                return new Handler(target, m, Kind.POJO_CONTEXT, resolve(g[0], cls, p[0]));
            case 3:
                return new Handler(target, m, Kind.POJO, resolve(g[0], cls, p[0]));
            default:
                return new Handler(target, m, Kind.NONE, null);
        }
    }

    /** handleRequest(I, Context) declared in a generic superclass: resolve I against the handler's class. */
    private static Type resolve(Type t, Class<?> cls, Class<?> erased) {
        if (t instanceof TypeVariable && RequestHandler.class.isAssignableFrom(cls)) {
            return requestHandlerInput(cls);
        }
        return t instanceof TypeVariable ? erased : t;
    }

    private static Object instantiate(Class<?> cls) throws Throwable {
        try {
            java.lang.reflect.Constructor<?> ctor = cls.getDeclaredConstructor();
            ctor.setAccessible(true);
            return ctor.newInstance();
        } catch (NoSuchMethodException e) {
            throw new Failure("java.lang.NoSuchMethodException", "Class " + cls.getName()
                    + " has no constructor without arguments", e);
        } catch (InvocationTargetException e) {
            throw e.getCause();
        }
    }

    /** Runs one event; returns the response body. Handler exceptions propagate as they are. */
    byte[] invoke(byte[] event, Context context) throws Throwable {
        try {
            switch (kind) {
                case STREAM_CONTEXT:
                case STREAM: {
                    ByteArrayOutputStream out = new ByteArrayOutputStream();
                    InputStream in = new ByteArrayInputStream(event);
                    if (kind == Kind.STREAM_CONTEXT) {
                        method.invoke(target, in, out, context);
                    } else {
                        method.invoke(target, in, out);
                    }
                    return out.toByteArray();
                }
                case NONE:
                    return result(method.invoke(target));
                default: {
                    Object input = input(event);
                    Object result = kind == Kind.POJO_CONTEXT
                            ? method.invoke(target, input, context)
                            : method.invoke(target, input);
                    return result(result);
                }
            }
        } catch (InvocationTargetException e) {
            throw e.getCause();
        }
    }

    private Object input(byte[] event) {
        Class<?> raw = Pojo.rawClass(inputType);
        if (raw == InputStream.class) {
            return new ByteArrayInputStream(event);
        }
        try {
            return Pojo.fromTree(Json.parse(event), inputType);
        } catch (Json.ParseException | Pojo.BindException e) {
            throw new Failure("Runtime.UnmarshalError", "Unable to unmarshal input: " + e.getMessage()
                    + " (handler input type " + inputType.getTypeName() + ")", e);
        }
    }

    private byte[] result(Object value) {
        if (method.getReturnType() == void.class) {
            return "null".getBytes(StandardCharsets.UTF_8);
        }
        try {
            return Json.write(Pojo.toTree(value)).getBytes(StandardCharsets.UTF_8);
        } catch (Pojo.BindException | IllegalArgumentException e) {
            throw new Failure("Runtime.MarshalError", "Unable to marshal response: " + e.getMessage(), e);
        }
    }
}
