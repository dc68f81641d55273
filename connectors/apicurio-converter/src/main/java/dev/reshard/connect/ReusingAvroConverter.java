package dev.reshard.connect;

import java.util.HashMap;
import java.util.Map;

import io.apicurio.registry.serde.config.SerdeConfig;
import io.apicurio.registry.utils.converter.AvroConverter;

/**
 * Apicurio's Avro converter (same wire format, same registry calls) with
 * {@link ReusingSchemaResolver}: each table version's schema is resolved once instead of
 * rendered and hashed again for every record. reshard registers it instead of Apicurio's
 * converter when the Connect worker lists it (it lives in the Apicurio converter's plugin
 * directory, whose classes it extends).
 */
public class ReusingAvroConverter<T> extends AvroConverter<T> {
    @Override
    public void configure(Map<String, ?> configs, boolean isKey) {
        Map<String, Object> copy = new HashMap<>(configs);
        copy.putIfAbsent(SerdeConfig.SCHEMA_RESOLVER, ReusingSchemaResolver.class);
        super.configure(copy, isKey);
    }
}
