package dev.reshard.connect;

import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;

import org.apache.avro.generic.GenericContainer;

import io.apicurio.registry.resolver.DefaultSchemaResolver;
import io.apicurio.registry.resolver.SchemaLookupResult;
import io.apicurio.registry.resolver.data.Record;
import io.apicurio.registry.serde.data.SerdeMetadata;

/**
 * Apicurio's schema resolver, resolving each (topic, key or value, Avro schema) once.
 *
 * <p>With auto-registration, Apicurio 3.0's resolver renders the record's Avro schema to its
 * JSON text and hashes that text to find it in its cache, for every record: on single-row
 * transactions that was about a third of Kafka Connect's CPU (a JFR profile of Debezium
 * capturing). Apicurio 3.2 caches the rendering, but its converter is not on Maven Central.
 * An Avro schema's content decides its registry id, so a schema equal to one resolved before
 * on the same topic and side gets the same answer; any other schema (a table's new version
 * after a schema change) goes to Apicurio's resolver as before, which registers it.
 */
public class ReusingSchemaResolver<S, T> extends DefaultSchemaResolver<S, T> {
    private record Key(String topic, boolean isKey, org.apache.avro.Schema schema) {
    }

    private final Map<Key, SchemaLookupResult<S>> resolved = new ConcurrentHashMap<>();

    @Override
    public SchemaLookupResult<S> resolveSchema(Record<T> data) {
        if (!(data.payload() instanceof GenericContainer container)
                || !(data.metadata() instanceof SerdeMetadata metadata)) {
            return super.resolveSchema(data);
        }
        Key key = new Key(metadata.getTopic(), metadata.isKey(), container.getSchema());
        SchemaLookupResult<S> found = resolved.get(key);
        if (found == null) {
            found = super.resolveSchema(data);
            resolved.put(key, found);
        }
        return found;
    }

    @Override
    public void reset() {
        resolved.clear();
        super.reset();
    }
}
