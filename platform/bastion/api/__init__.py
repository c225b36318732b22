"""HTTP only: routes, authentication, problem+json errors, OpenAPI and pagination.

Handlers parse the request, call the `crm` services (in a worker thread: the
services are synchronous and hold a database transaction) and shape the response.
No handler decides access or touches a table.
"""
