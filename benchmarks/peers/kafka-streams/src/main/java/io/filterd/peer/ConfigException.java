package io.filterd.peer;

/** A bad or missing setting: start-up stops with a message naming the key. */
final class ConfigException extends RuntimeException {
    ConfigException(String key, String message) {
        super("config " + key + ": " + message);
    }
}
