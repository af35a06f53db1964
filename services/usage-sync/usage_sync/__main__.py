from shared.service import main

from .app import SERVICE, build_app
from .settings import UsageSyncSettings

if __name__ == "__main__":
    main(SERVICE, UsageSyncSettings, build_app, "usage_sync_http_port")
