"""Where WooCommerce's REST API lives on a WordPress site: one definition for the client and the sandbox.

(The page limit, per_page at most 100, is a bound like any other: domain.bounds.MAX_PER_PAGE.)
"""

from __future__ import annotations

REST_ROOT = "/wp-json"  # WordPress's REST root: every route below it answers JSON, anything else is the site
API_ROOT = f"{REST_ROOT}/wc/v3"  # WooCommerce's REST namespace, version 3
CUSTOMERS_PATH = f"{API_ROOT}/customers"
