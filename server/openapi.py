"""``GET /openapi.json``: an OpenAPI 3.1 description of the HTTP routes that are not MCP.

Written by hand beside the routes (``server/http.py``, ``uploads.py``, ``result_urls.py``,
``callbacks.py``, ``console/routes.py``, ``metrics.py``) and fuzzed in the suite by
schemathesis against a running server (``tests/test_openapi.py``): whatever a client
sends, no 5xx but the documented 503s of an unreachable store, and no traceback. The
console's routes are listed when the console is on.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.front_door import BodyLimits
from tools.config import Settings

JSON = "application/json"


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _html(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


TOO_LARGE = _error("the body is over the route's limit (the connection is closed)")
WRONG_HOST = _error("Host or Origin does not name this server (DNS-rebinding protection)")
BUSY = _error("the store cannot be reached now (Retry-After says when to try again)")
STR = {"type": "string", "maxLength": 200}


def _path_param(name: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema or STR}


def _guarded(description: str, responses: dict[str, Any]) -> dict[str, Any]:
    """A console route: a session cookie, else 401 (JSON) or a redirect to the sign-in."""
    return {
        "summary": description,
        "tags": ["console"],
        "security": [{"console": []}],
        "responses": {
            **responses,
            "303": {"description": "to the sign-in page (no session) or after an action"},
            "400": _error("a malformed form or field"),
            "401": _error("no live session"),
            "403": _error("the form's CSRF token is wrong"),
            "404": _error("no such task"),
            "413": TOO_LARGE,
            "503": BUSY,
        },
    }


def _console(limits: BodyLimits) -> dict[str, Any]:
    form = {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {"type": "object", "additionalProperties": STR, "maxProperties": 20}
            }
        },
    }
    task = [_path_param("task_id")]
    html = {"200": _html("the page")}
    data = {
        "200": {"description": "the page's data", "content": {JSON: {"schema": {"type": "object"}}}}
    }
    action = lambda summary, params=(): {  # noqa: E731
        "post": {**_guarded(summary, {}), "parameters": list(params), "requestBody": form}
    }
    return {
        "/console": {"get": _guarded("the console's home", html)},
        "/console/login": {
            "get": {"summary": "the sign-in form", "tags": ["console"], "responses": html},
            "post": {
                "summary": "sign in with an operator token",
                "tags": ["console"],
                "requestBody": form,
                "responses": {
                    "303": {"description": "signed in: to the console"},
                    "400": _error("a malformed form"),
                    "401": _html("wrong token"),
                    "403": _html("the sign-in form's token is wrong or old"),
                    "413": TOO_LARGE,
                    "429": _html("too many attempts"),
                },
            },
        },
        "/console/logout": action("sign out"),
        "/console/tasks": {"get": _guarded("the task list", html)},
        "/console/api/tasks": {
            "get": {
                **_guarded("tasks as JSON", data),
                "parameters": [
                    {"name": n, "in": "query", "required": False, "schema": STR}
                    for n in ("status", "vendor", "owner", "before", "limit", "q")
                ],
            }
        },
        "/console/tasks/{task_id}": {
            "get": {**_guarded("a task's page", html), "parameters": task}
        },
        "/console/api/tasks/{task_id}": {
            "get": {**_guarded("a task as JSON", data), "parameters": task}
        },
        "/console/thumbs/{task_id}/{role}/{index}": {
            "get": {
                **_guarded("a thumbnail", {"200": {"description": "a JPEG thumbnail"}}),
                "parameters": [*task, _path_param("role"), _path_param("index")],
            }
        },
        "/console/tasks/{task_id}/cancel": action("cancel a task", task),
        "/console/tasks/{task_id}/again": action("run a task again", task),
        "/console/vendors": {"get": _guarded("vendors", html)},
        "/console/costs": {"get": _guarded("costs", html)},
        "/console/users": {"get": _guarded("users and budgets", html)},
        "/console/users/revoke": action("revoke a user"),
        "/console/budgets": action("set an owner's budget"),
    }


def describe(settings: Settings) -> dict[str, Any]:
    """The description, with the limits of these settings."""
    limits = BodyLimits(settings)
    upload_max = settings.media.max_bytes
    image = {"schema": {"type": "string", "format": "binary", "maxLength": upload_max}}
    paths: dict[str, Any] = {
        "/health": {
            "get": {
                "summary": "whether the server answers",
                "responses": {
                    "200": {
                        "description": "it does",
                        "content": {
                            JSON: {
                                "schema": {
                                    "type": "object",
                                    "properties": {"status": {"const": "ok"}},
                                    "required": ["status"],
                                }
                            }
                        },
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "this description",
                "responses": {"200": {"description": "OpenAPI 3.1", "content": {JSON: {}}}},
            }
        },
        "/uploads": {
            "post": {
                "summary": "store an image for the caller; use its uri as an edit's image",
                "security": [{"bearer": []}],
                "requestBody": {
                    "required": True,
                    "description": f"the image (at most {upload_max} bytes), raw or as the "
                    "multipart field `file`",
                    "content": {
                        "image/png": image,
                        "image/jpeg": image,
                        "image/webp": image,
                        "application/octet-stream": image,
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {"file": {"type": "string", "format": "binary"}},
                                "required": ["file"],
                            }
                        },
                    },
                },
                "responses": {
                    "201": {
                        "description": "stored",
                        "content": {JSON: {"schema": {"$ref": "#/components/schemas/Upload"}}},
                    },
                    "400": _error("not readable as an image, or the body ended early"),
                    "401": _error("no or a wrong bearer token"),
                    "403": _error("sent from another site's page"),
                    "408": _error("the body came too slowly"),
                    "413": TOO_LARGE,
                    "415": _error("not an image format Retouch takes"),
                    "421": WRONG_HOST,
                    "503": BUSY,
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (open to an unforwarded loopback client)",
                "security": [{"metrics": []}],
                "responses": {
                    "200": {"description": "the text format", "content": {"text/plain": {}}},
                    "401": {"description": "no or a wrong metrics token"},
                    "413": {"description": "a scrape has no body"},
                    "503": BUSY,
                },
            }
        },
        "/upload": {
            "get": {
                "summary": "a page that uploads from a browser",
                "responses": {"200": _html("the page")},
            }
        },
        "/results/{task_id}/{index}": {
            "get": {
                "summary": "a result image, to whoever holds its signed link",
                "parameters": [
                    _path_param("task_id"),
                    _path_param("index", {"type": "string", "pattern": "^[0-9]{1,3}$"}),
                    {"name": "exp", "in": "query", "required": True, "schema": STR},
                    {"name": "sig", "in": "query", "required": True, "schema": STR},
                ],
                "responses": {
                    "200": {"description": "the image", "content": {"image/*": {}}},
                    "403": _error("the link's signature is wrong"),
                    "404": _error("no such route"),
                    "410": _error("the link has expired, or the result is no longer stored"),
                    "503": BUSY,
                },
            }
        },
        "/callbacks/{vendor}/{secret}": {
            "post": {
                "summary": "a vendor's notice that a task ended (the URL's secret is its key)",
                "parameters": [_path_param("vendor"), _path_param("secret")],
                "requestBody": {
                    "required": True,
                    "description": f"the vendor's JSON, at most {limits.callback.size} bytes",
                    "content": {JSON: {"schema": {"type": "object"}}},
                },
                "responses": {
                    "200": {
                        "description": "taken (or the task had already ended)",
                        "content": {JSON: {}},
                    },
                    "400": _error("a malformed callback"),
                    "404": _error("no such callback URL, or no task waiting for it"),
                    "408": _error("the body came too slowly"),
                    "413": TOO_LARGE,
                    "415": _error("not JSON"),
                    "503": BUSY,
                },
            }
        },
        "/callbacks/{vendor}": {
            "post": {
                "summary": "refused: a callback URL ends in its secret",
                "parameters": [_path_param("vendor")],
                "responses": {"400": _error("no secret in the URL"), "413": TOO_LARGE},
            }
        },
    }
    if settings.console.enabled:
        paths.update(_console(limits))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Retouch HTTP routes (besides MCP)",
            "version": "1",
            "description": f"MCP itself is at {settings.mcp.path} (streamable HTTP). Every "
            "route answers 421 to a Host that does not name the server and 403 to a foreign "
            "Origin, and refuses a body over its limit with 413.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "metrics": {"type": "http", "scheme": "bearer", "description": "[metrics] token"},
                "console": {"type": "apiKey", "in": "cookie", "name": "retouch_console"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {"type": "string"},
                        "code": {"type": ["string", "integer"]},
                        "message": {"type": "string"},
                    },
                },
                "Upload": {
                    "type": "object",
                    "properties": {
                        "uri": {"type": "string"},
                        "mime_type": {"type": "string"},
                        "width": {"type": "integer"},
                        "height": {"type": "integer"},
                        "bytes": {"type": "integer"},
                        "expires_at": {"type": "string"},
                    },
                    "required": ["uri"],
                },
            },
        },
    }


def route(settings: Settings) -> Any:
    """The route's handler, with the description made once."""
    document = describe(settings)

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    return openapi
