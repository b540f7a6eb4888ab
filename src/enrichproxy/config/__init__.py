"""The configuration: YAML parsed and validated once into frozen values (pure)."""
