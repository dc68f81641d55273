package dev.reshard.connect;

import java.util.Map;

import org.apache.kafka.common.config.ConfigDef;
import org.apache.kafka.connect.connector.ConnectRecord;
import org.apache.kafka.connect.data.Field;
import org.apache.kafka.connect.data.Struct;
import org.apache.kafka.connect.transforms.predicates.Predicate;

/**
 * True for a Debezium change event whose transaction carried a replication origin that
 * starts with {@code prefix} (Debezium reports the origin as {@code source.origin}; each
 * reshard applier direction tags its sessions with one of a pool of origins sharing a
 * prefix). Records without a {@code source} block (Debezium heartbeats, tombstones) or
 * without an origin never match, so a Filter transform using this predicate drops only
 * the changes those sessions wrote.
 */
public class OriginStartsWith<R extends ConnectRecord<R>> implements Predicate<R> {
    public static final String PREFIX = "prefix";
    private static final ConfigDef CONFIG = new ConfigDef().define(
            PREFIX, ConfigDef.Type.STRING, ConfigDef.NO_DEFAULT_VALUE, new ConfigDef.NonEmptyString(),
            ConfigDef.Importance.HIGH, "Changes whose replication origin starts with this match.");

    private String prefix;

    @Override
    public ConfigDef config() {
        return CONFIG;
    }

    @Override
    public void configure(Map<String, ?> configs) {
        prefix = (String) CONFIG.parse(configs).get(PREFIX);
    }

    @Override
    public boolean test(R record) {
        if (!(record.value() instanceof Struct value)) {
            return false;
        }
        Field sourceField = value.schema().field("source");
        if (sourceField == null || !(value.get(sourceField) instanceof Struct source)) {
            return false;
        }
        Field originField = source.schema().field("origin");
        return originField != null && source.get(originField) instanceof String origin && origin.startsWith(prefix);
    }

    @Override
    public void close() {
    }
}
