"""Field truth: the four monitoring pillars, alert rules, shadow evaluation and its go/no-go gate, threshold
tuning and training-data promotion. A storage-agnostic library over iterables of fleet.protocol records, so the
fleet service can feed it from its store and tests can feed it recorded streams."""
