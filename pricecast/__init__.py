"""pricecast: nightly retraining of weekly price forecasts (settings and error types live here)."""

__version__ = "0.1.0"
