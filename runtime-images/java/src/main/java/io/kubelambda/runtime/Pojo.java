package io.kubelambda.runtime;

import java.lang.reflect.Array;
import java.lang.reflect.Constructor;
import java.lang.reflect.Field;
import java.lang.reflect.GenericArrayType;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.lang.reflect.ParameterizedType;
import java.lang.reflect.RecordComponent;
import java.lang.reflect.Type;
import java.lang.reflect.TypeVariable;
import java.lang.reflect.WildcardType;
import java.math.BigDecimal;
import java.math.BigInteger;
import java.time.temporal.TemporalAccessor;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Collection;
import java.util.Date;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Optional;
import java.util.Set;
import java.util.SortedMap;
import java.util.TreeMap;
import java.util.concurrent.ConcurrentHashMap;

/**
 * Binds JSON trees ({@link Json}) to handler types and back, with the rules of the Jackson setup Lambda's Java
 * runtime uses, for the cases handlers rely on: Java beans (setters or public fields in, getters or public fields
 * out), records, {@code Map}, {@code List}/{@code Set}, arrays, enums by name, scalars, {@code byte[]} as base64.
 * Unknown properties are ignored and property names match case-insensitively when there is no exact match, so
 * Lambda's own event shapes ({@code Records}) bind to bean properties ({@code records}).
 */
final class Pojo {
    private Pojo() {}

    /** The event or the result does not fit the handler's type. */
    static final class BindException extends RuntimeException {
        private static final long serialVersionUID = 1L;

        BindException(String message) {
            super(message);
        }

        BindException(String message, Throwable cause) {
            super(message, cause);
        }
    }

    private static final Map<Class<?>, Map<String, Property>> SETTERS = new ConcurrentHashMap<>();
    private static final Map<Class<?>, List<Getter>> GETTERS = new ConcurrentHashMap<>();

    // --- JSON tree → Java ------------------------------------------------------------------------

    static Object fromTree(Object tree, Type type) {
        return fromTree(tree, type, 0);
    }

    private static Object fromTree(Object tree, Type type, int depth) {
        if (depth > 1000) {
            throw new BindException("nesting too deep");
        }
        Class<?> raw = rawClass(type);
        if (tree == null) {
            if (raw.isPrimitive()) {
                throw new BindException("null for primitive " + raw.getName());
            }
            return raw == Optional.class ? Optional.empty() : null;
        }
        if (raw == Object.class || raw == java.io.Serializable.class) {
            return tree;
        }
        if (raw == String.class || raw == CharSequence.class) {
            if (tree instanceof Map || tree instanceof List) {
                throw new BindException("cannot read a String from a JSON " + kind(tree));
            }
            return tree.toString();
        }
        if (raw == Optional.class) {
            return Optional.ofNullable(fromTree(tree, typeArg(type, 0), depth + 1));
        }
        Object scalar = scalar(tree, raw);
        if (scalar != null) {
            return scalar;
        }
        if (raw.isEnum()) {
            for (Object constant : raw.getEnumConstants()) {
                if (((Enum<?>) constant).name().equals(tree.toString())) {
                    return constant;
                }
            }
            throw new BindException("no constant " + tree + " in enum " + raw.getName());
        }
        if (raw == byte[].class && tree instanceof String) {
            return Base64.getDecoder().decode((String) tree);
        }
        if (raw.isArray()) {
            List<?> items = asList(tree, raw);
            Type component = type instanceof GenericArrayType
                    ? ((GenericArrayType) type).getGenericComponentType()
                    : raw.getComponentType();
            Object array = Array.newInstance(raw.getComponentType(), items.size());
            for (int i = 0; i < items.size(); i++) {
                Array.set(array, i, fromTree(items.get(i), component, depth + 1));
            }
            return array;
        }
        if (Map.class.isAssignableFrom(raw)) {
            if (!(tree instanceof Map)) {
                throw new BindException("cannot read a " + raw.getSimpleName() + " from a JSON " + kind(tree));
            }
            Type keyType = typeArg(type, 0);
            Type valueType = typeArg(type, 1);
            Map<Object, Object> out = newMap(raw);
            for (Map.Entry<?, ?> e : ((Map<?, ?>) tree).entrySet()) {
                out.put(fromTree(e.getKey(), keyType, depth + 1), fromTree(e.getValue(), valueType, depth + 1));
            }
            return out;
        }
        if (Collection.class.isAssignableFrom(raw) || raw == Iterable.class) {
            List<?> items = asList(tree, raw);
            Type itemType = typeArg(type, 0);
            Collection<Object> out = newCollection(raw);
            for (Object item : items) {
                out.add(fromTree(item, itemType, depth + 1));
            }
            return out;
        }
        if (!(tree instanceof Map)) {
            throw new BindException("cannot read a " + raw.getName() + " from a JSON " + kind(tree));
        }
        @SuppressWarnings("unchecked")
        Map<String, Object> object = (Map<String, Object>) tree;
        if (raw.isRecord()) {
            return record(object, raw, depth);
        }
        return bean(object, raw, depth);
    }

    private static String kind(Object tree) {
        if (tree instanceof Map) {
            return "object";
        }
        if (tree instanceof List) {
            return "array";
        }
        if (tree instanceof String) {
            return "string";
        }
        if (tree instanceof Boolean) {
            return "boolean";
        }
        return "number";
    }

    private static List<?> asList(Object tree, Class<?> raw) {
        if (tree instanceof List) {
            return (List<?>) tree;
        }
        // Jackson's ACCEPT_SINGLE_VALUE_AS_ARRAY is off by default: so is ours.
        throw new BindException("cannot read a " + raw.getSimpleName() + " from a JSON " + kind(tree));
    }

    /** Scalars: Jackson coerces numbers and strings into each other for these. Null if raw is not a scalar. */
    private static Object scalar(Object tree, Class<?> raw) {
        boolean number = tree instanceof Number;
        boolean text = tree instanceof String;
        if (!number && !text && !(tree instanceof Boolean)) {
            return null;
        }
        try {
            if (raw == int.class || raw == Integer.class) {
                return number ? ((Number) tree).intValue() : Integer.valueOf(tree.toString());
            }
            if (raw == long.class || raw == Long.class) {
                return number ? ((Number) tree).longValue() : Long.valueOf(tree.toString());
            }
            if (raw == double.class || raw == Double.class) {
                return number ? ((Number) tree).doubleValue() : Double.valueOf(tree.toString());
            }
            if (raw == float.class || raw == Float.class) {
                return number ? ((Number) tree).floatValue() : Float.valueOf(tree.toString());
            }
            if (raw == short.class || raw == Short.class) {
                return number ? ((Number) tree).shortValue() : Short.valueOf(tree.toString());
            }
            if (raw == byte.class || raw == Byte.class) {
                return number ? ((Number) tree).byteValue() : Byte.valueOf(tree.toString());
            }
            if (raw == boolean.class || raw == Boolean.class) {
                if (tree instanceof Boolean) {
                    return tree;
                }
                if (text && ("true".equals(tree) || "false".equals(tree))) {
                    return Boolean.valueOf((String) tree);
                }
                throw new BindException("cannot read a boolean from " + tree);
            }
            if (raw == char.class || raw == Character.class) {
                String s = tree.toString();
                if (s.length() != 1) {
                    throw new BindException("cannot read a char from \"" + s + "\"");
                }
                return s.charAt(0);
            }
            if (raw == BigDecimal.class) {
                return new BigDecimal(tree.toString());
            }
            if (raw == BigInteger.class) {
                return new BigInteger(tree.toString());
            }
            if (raw == Number.class) {
                return number ? tree : new BigDecimal(tree.toString());
            }
        } catch (NumberFormatException e) {
            throw new BindException("cannot read a " + raw.getSimpleName() + " from \"" + tree + "\"", e);
        }
        return null;
    }

    private static Map<Object, Object> newMap(Class<?> raw) {
        if (!raw.isInterface() && !Modifier.isAbstract(raw.getModifiers())) {
            try {
                @SuppressWarnings("unchecked")
                Map<Object, Object> m = (Map<Object, Object>) raw.getDeclaredConstructor().newInstance();
                return m;
            } catch (ReflectiveOperationException e) {
                throw new BindException("cannot create a " + raw.getName(), e);
            }
        }
        return SortedMap.class.isAssignableFrom(raw) ? new TreeMap<>() : new LinkedHashMap<>();
    }

    private static Collection<Object> newCollection(Class<?> raw) {
        if (!raw.isInterface() && !Modifier.isAbstract(raw.getModifiers())) {
            try {
                @SuppressWarnings("unchecked")
                Collection<Object> c = (Collection<Object>) raw.getDeclaredConstructor().newInstance();
                return c;
            } catch (ReflectiveOperationException e) {
                throw new BindException("cannot create a " + raw.getName(), e);
            }
        }
        if (Set.class.isAssignableFrom(raw)) {
            return raw == HashSet.class ? new HashSet<>() : new LinkedHashSet<>();
        }
        return new ArrayList<>();
    }

    private static Object record(Map<String, Object> object, Class<?> raw, int depth) {
        RecordComponent[] components = raw.getRecordComponents();
        Class<?>[] types = new Class<?>[components.length];
        Object[] args = new Object[components.length];
        for (int i = 0; i < components.length; i++) {
            RecordComponent c = components[i];
            types[i] = c.getType();
            Object value = lookup(object, c.getName());
            args[i] = value == MISSING ? defaultValue(c.getType()) : fromTree(value, c.getGenericType(), depth + 1);
        }
        try {
            Constructor<?> ctor = raw.getDeclaredConstructor(types);
            ctor.setAccessible(true);
            return ctor.newInstance(args);
        } catch (ReflectiveOperationException e) {
            throw new BindException("cannot create record " + raw.getName() + ": " + e, e);
        }
    }

    private static final Object MISSING = new Object();

    private static Object lookup(Map<String, Object> object, String name) {
        if (object.containsKey(name)) {
            return object.get(name);
        }
        for (Map.Entry<String, Object> e : object.entrySet()) {
            if (e.getKey().equalsIgnoreCase(name)) {
                return e.getValue();
            }
        }
        return MISSING;
    }

    private static Object defaultValue(Class<?> type) {
        if (!type.isPrimitive()) {
            return type == Optional.class ? Optional.empty() : null;
        }
        if (type == boolean.class) {
            return false;
        }
        if (type == char.class) {
            return '\0';
        }
        return scalar(0, type);
    }

    /** A bean property that can be written: a one-argument setter or a public non-final field. */
    private static final class Property {
        final Method setter;
        final Field field;

        Property(Method setter, Field field) {
            this.setter = setter;
            this.field = field;
        }

        Type type() {
            return setter != null ? setter.getGenericParameterTypes()[0] : field.getGenericType();
        }

        void set(Object target, Object value) throws ReflectiveOperationException {
            if (setter != null) {
                setter.invoke(target, value);
            } else {
                field.set(target, value);
            }
        }
    }

    private static Map<String, Property> setters(Class<?> raw) {
        return SETTERS.computeIfAbsent(raw, cls -> {
            Map<String, Property> out = new LinkedHashMap<>();
            for (Field f : cls.getFields()) {
                if (!Modifier.isStatic(f.getModifiers()) && !Modifier.isFinal(f.getModifiers())) {
                    out.put(f.getName(), new Property(null, f));
                }
            }
            for (Method m : cls.getMethods()) {
                String name = m.getName();
                if (name.length() > 3 && name.startsWith("set") && m.getParameterCount() == 1
                        && !Modifier.isStatic(m.getModifiers()) && !m.isBridge()) {
                    out.put(propertyName(name.substring(3)), new Property(m, null));
                }
            }
            return out;
        });
    }

    private static Object bean(Map<String, Object> object, Class<?> raw, int depth) {
        Object target;
        try {
            Constructor<?> ctor = raw.getDeclaredConstructor();
            ctor.setAccessible(true);
            target = ctor.newInstance();
        } catch (NoSuchMethodException e) {
            throw new BindException("cannot create " + raw.getName() + ": it has no constructor without arguments");
        } catch (ReflectiveOperationException e) {
            throw new BindException("cannot create " + raw.getName() + ": " + e, e);
        }
        Map<String, Property> props = setters(raw);
        for (Map.Entry<String, Object> e : object.entrySet()) {
            Property p = props.get(e.getKey());
            if (p == null) {
                for (Map.Entry<String, Property> candidate : props.entrySet()) {
                    if (candidate.getKey().equalsIgnoreCase(e.getKey())) {
                        p = candidate.getValue();
                        break;
                    }
                }
            }
            if (p == null) {
                continue; // unknown properties are ignored, as Lambda's serializer does
            }
            try {
                p.set(target, fromTree(e.getValue(), p.type(), depth + 1));
            } catch (ReflectiveOperationException ex) {
                throw new BindException("cannot set " + raw.getName() + "." + e.getKey() + ": " + ex, ex);
            }
        }
        return target;
    }

    /** Jackson's bean naming: "FirstName" → "firstName", "URL" → "url", "URLPath" → "urlpath". */
    static String propertyName(String suffix) {
        int upper = 0;
        while (upper < suffix.length() && Character.isUpperCase(suffix.charAt(upper))) {
            upper++;
        }
        if (upper == 0) {
            return suffix;
        }
        return suffix.substring(0, upper).toLowerCase(Locale.ROOT) + suffix.substring(upper);
    }

    static Class<?> rawClass(Type type) {
        if (type instanceof Class) {
            return (Class<?>) type;
        }
        if (type instanceof ParameterizedType) {
            return rawClass(((ParameterizedType) type).getRawType());
        }
        if (type instanceof GenericArrayType) {
            Class<?> component = rawClass(((GenericArrayType) type).getGenericComponentType());
            return Array.newInstance(component, 0).getClass();
        }
        if (type instanceof WildcardType) {
            Type[] upper = ((WildcardType) type).getUpperBounds();
            return upper.length > 0 ? rawClass(upper[0]) : Object.class;
        }
        if (type instanceof TypeVariable) {
            Type[] bounds = ((TypeVariable<?>) type).getBounds();
            return bounds.length > 0 ? rawClass(bounds[0]) : Object.class;
        }
        return Object.class;
    }

    private static Type typeArg(Type type, int index) {
        if (type instanceof ParameterizedType) {
            Type[] args = ((ParameterizedType) type).getActualTypeArguments();
            if (index < args.length) {
                return args[index];
            }
        }
        return Object.class;
    }

    // --- Java → JSON tree ------------------------------------------------------------------------

    /** A tree {@link Json#write} can write: beans become insertion-ordered maps of their properties. */
    static Object toTree(Object value) {
        return toTree(value, 0);
    }

    private static Object toTree(Object value, int depth) {
        if (depth > 1000) {
            throw new BindException("nesting too deep (a cycle?)");
        }
        if (value == null || value instanceof CharSequence || value instanceof Boolean || value instanceof Number) {
            return value;
        }
        if (value instanceof Character || value instanceof Enum || value instanceof TemporalAccessor
                || value instanceof java.util.UUID || value instanceof java.net.URI) {
            return value.toString();
        }
        if (value instanceof Date) {
            return ((Date) value).getTime(); // Jackson's default: epoch milliseconds
        }
        if (value instanceof Optional) {
            return toTree(((Optional<?>) value).orElse(null), depth + 1);
        }
        if (value instanceof byte[]) {
            return Base64.getEncoder().encodeToString((byte[]) value);
        }
        if (value.getClass().isArray()) {
            int n = Array.getLength(value);
            List<Object> out = new ArrayList<>(n);
            for (int i = 0; i < n; i++) {
                out.add(toTree(Array.get(value, i), depth + 1));
            }
            return out;
        }
        if (value instanceof Map) {
            Map<String, Object> out = new LinkedHashMap<>();
            for (Map.Entry<?, ?> e : ((Map<?, ?>) value).entrySet()) {
                out.put(String.valueOf(e.getKey()), toTree(e.getValue(), depth + 1));
            }
            return out;
        }
        if (value instanceof Iterable) {
            List<Object> out = new ArrayList<>();
            for (Object item : (Iterable<?>) value) {
                out.add(toTree(item, depth + 1));
            }
            return out;
        }
        Map<String, Object> out = new LinkedHashMap<>();
        for (Getter g : getters(value.getClass())) {
            try {
                out.put(g.name, toTree(g.get(value), depth + 1));
            } catch (ReflectiveOperationException e) {
                Throwable cause = e.getCause() != null ? e.getCause() : e;
                throw new BindException("cannot read " + value.getClass().getName() + "." + g.name + ": " + cause, cause);
            }
        }
        return out;
    }

    private static final class Getter {
        final String name;
        final Method method;
        final Field field;

        Getter(String name, Method method, Field field) {
            this.name = name;
            this.method = method;
            this.field = field;
        }

        Object get(Object target) throws ReflectiveOperationException {
            return method != null ? method.invoke(target) : field.get(target);
        }
    }

    private static List<Getter> getters(Class<?> cls) {
        return GETTERS.computeIfAbsent(cls, c -> {
            Map<String, Getter> out = new LinkedHashMap<>();
            if (c.isRecord()) {
                for (RecordComponent rc : c.getRecordComponents()) {
                    Method m = rc.getAccessor();
                    m.setAccessible(true);
                    out.put(rc.getName(), new Getter(rc.getName(), m, null));
                }
                return new ArrayList<>(out.values());
            }
            for (Field f : c.getFields()) {
                if (!Modifier.isStatic(f.getModifiers())) {
                    out.put(f.getName(), new Getter(f.getName(), null, f));
                }
            }
            // Sorted by name: getMethods() has no defined order, and output must not churn between runs.
            List<Method> methods = new ArrayList<>(List.of(c.getMethods()));
            methods.sort((a, b) -> a.getName().compareTo(b.getName()));
            for (Method m : methods) {
                if (m.getParameterCount() != 0 || Modifier.isStatic(m.getModifiers()) || m.isBridge()
                        || m.getDeclaringClass() == Object.class || m.getReturnType() == void.class) {
                    continue;
                }
                String n = m.getName();
                String name = null;
                if (n.startsWith("get") && n.length() > 3) {
                    name = propertyName(n.substring(3));
                } else if (n.startsWith("is") && n.length() > 2
                        && (m.getReturnType() == boolean.class || m.getReturnType() == Boolean.class)) {
                    name = propertyName(n.substring(2));
                }
                if (name != null) {
                    if (!Modifier.isPublic(c.getModifiers())) {
                        m.setAccessible(true);
                    }
                    out.put(name, new Getter(name, m, null));
                }
            }
            return byFieldOrder(c, out);
        });
    }

    /** Jackson's order: properties backed by a field in the fields' declaration order (superclass first). */
    private static List<Getter> byFieldOrder(Class<?> c, Map<String, Getter> getters) {
        List<Class<?>> chain = new ArrayList<>();
        for (Class<?> k = c; k != null && k != Object.class; k = k.getSuperclass()) {
            chain.add(0, k);
        }
        Map<String, Getter> rest = new LinkedHashMap<>(getters);
        List<Getter> ordered = new ArrayList<>();
        for (Class<?> k : chain) {
            for (Field f : k.getDeclaredFields()) {
                Getter g = rest.remove(f.getName());
                if (g != null) {
                    ordered.add(g);
                }
            }
        }
        ordered.addAll(rest.values());
        return ordered;
    }
}
