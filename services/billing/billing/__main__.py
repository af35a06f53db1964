from shared.service import main

from .app import SERVICE, build_app
from .settings import BillingSettings

if __name__ == "__main__":
    main(SERVICE, BillingSettings, build_app, "billing_http_port")
