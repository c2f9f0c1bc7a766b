"""The admin console at ``/console``: server-rendered pages over the same services as the
API, for the people who run Personify (docs/console.md).

``console.py`` assembles the router; ``session.py`` is its one guard (sessions, roles,
CSRF); ``rendering.py`` the templates and the navigation; one module per page.
"""
