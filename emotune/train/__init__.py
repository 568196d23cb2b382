"""Training pipeline: config schema, data, model + cost embedding, training stage."""
