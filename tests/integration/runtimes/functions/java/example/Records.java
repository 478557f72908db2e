package example;

import com.amazonaws.services.lambda.runtime.Context;
import com.amazonaws.services.lambda.runtime.RequestHandler;
import java.util.List;
import java.util.Map;

/** Records in and out, through a generic base class (I resolved from the subclass). */
public class Records extends BaseHandler<Records.Order> {
    public record Item(String sku, int quantity, double price) {}

    public record Order(String id, List<Item> items, Map<String, String> labels) {}

    public record Total(String id, double total, int lines) {}

    @Override
    Object process(Order order) {
        double total = 0;
        for (Item item : order.items()) {
            total += item.quantity() * item.price();
        }
        return new Total(order.id(), total, order.items().size());
    }
}

abstract class BaseHandler<T> implements RequestHandler<T, Object> {
    @Override
    public Object handleRequest(T input, Context context) {
        return process(input);
    }

    abstract Object process(T input);
}
