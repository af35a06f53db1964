"""python -m polar_emulator: serve the emulator (settings from EMULATOR_* variables)."""
import uvicorn

from shared.logs import setup_logging

from .app import build_app
from .config import EmulatorSettings

if __name__ == "__main__":
    settings = EmulatorSettings()
    setup_logging("polar-emulator")
    uvicorn.run(build_app(settings), host=settings.host, port=settings.port, log_config=None, access_log=False)
