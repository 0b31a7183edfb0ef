package io.filterd.peer;

import java.util.HashMap;
import java.util.Map;
import java.util.Properties;

/** The category rules and input limits, from the run's properties (filterd's [policy]). */
final class Policy {
    private static final String CATEGORY = "policy.category.";

    final String countryCode;
    final int maxEventBytes;
    /** category -> exempt? */
    final Map<String, Boolean> exempt;
    final boolean defaultExempt;
    /** Unicode NFKC before number normalization (contract step 0), when filterd does it. */
    final boolean nfkc;

    Policy(String countryCode, int maxEventBytes, Map<String, Boolean> exempt, boolean defaultExempt, boolean nfkc) {
        this.countryCode = countryCode;
        this.maxEventBytes = maxEventBytes;
        this.exempt = exempt;
        this.defaultExempt = defaultExempt;
        this.nfkc = nfkc;
    }

    /**
     * {@code policy.country.code}, {@code policy.max.event.bytes}, {@code
     * policy.category.NAME} (one per category: its rule), {@code policy.default.rule}, {@code
     * policy.nfkc}; a bad or missing value stops start-up naming the key.
     */
    static Policy from(Properties props) {
        String cc = Config.required(props, "policy.country.code");
        if (!cc.matches("[1-9][0-9]{0,3}")) {
            throw new ConfigException("policy.country.code", "must be 1 to 4 digits, got " + cc);
        }
        int maxBytes = Config.positiveInt(props, "policy.max.event.bytes");
        Map<String, Boolean> exempt = new HashMap<>();
        for (String key : props.stringPropertyNames()) {
            if (key.startsWith(CATEGORY)) {
                exempt.put(key.substring(CATEGORY.length()), rule(key, props.getProperty(key)));
            }
        }
        boolean defaultExempt = rule("policy.default.rule", Config.required(props, "policy.default.rule"));
        boolean nfkc = Config.bool(props, "policy.nfkc");
        return new Policy(cc, maxBytes, exempt, defaultExempt, nfkc);
    }

    private static boolean rule(String key, String rule) {
        return switch (rule) {
            case "exempt" -> true;
            case "require-consent" -> false;
            default -> throw new ConfigException(key, "rule must be require-consent or exempt, got " + rule);
        };
    }
}
