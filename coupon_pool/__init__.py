"""coupon-pool: a Redis-native coupon pool service."""

__version__ = "0.1.0"
