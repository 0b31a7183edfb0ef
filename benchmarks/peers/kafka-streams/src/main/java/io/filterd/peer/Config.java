package io.filterd.peer;

import java.util.Properties;

/** Reading typed values out of the run's properties file. */
final class Config {
    private Config() {}

    static String required(Properties props, String key) {
        String value = props.getProperty(key);
        if (value == null) {
            throw new ConfigException(key, "missing");
        }
        return value;
    }

    static int positiveInt(Properties props, String key) {
        String value = required(props, key);
        try {
            int n = Integer.parseInt(value.strip());
            if (n > 0) {
                return n;
            }
        } catch (NumberFormatException e) {
            // reported below
        }
        throw new ConfigException(key, "must be a positive integer, got " + value);
    }

    static boolean bool(Properties props, String key) {
        String value = required(props, key).strip();
        return switch (value) {
            case "true" -> true;
            case "false" -> false;
            default -> throw new ConfigException(key, "must be true or false, got " + value);
        };
    }
}
