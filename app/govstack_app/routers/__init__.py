"""The API's routes, one APIRouter per resource: ops (probes, metrics), documents, collections,
search and keys. ``deps`` holds what they share: authentication by API key and the request's
services, settings, client address and request id."""
