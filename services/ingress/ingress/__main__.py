from shared.service import main

from .app import SERVICE, build_app
from .settings import IngressSettings

if __name__ == "__main__":
    main(SERVICE, IngressSettings, build_app, "ingress_port")
