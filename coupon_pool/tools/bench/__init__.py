"""The bundled load generator (``coupon-pool bench``) and the reference server it compares with."""
