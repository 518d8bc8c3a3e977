"""Model core: bases, bundles, prediction and explanation, lungs, OOD. Imports no Qt; TensorFlow is imported lazily."""
