"""The web dashboard served at `/`: server-rendered pages kept live by a small script that
calls the `/v1` API with the sign-in cookie."""

from app.web.render import static_files
from app.web.routes import router

__all__ = ["router", "static_files"]
