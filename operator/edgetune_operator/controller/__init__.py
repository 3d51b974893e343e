"""The controller: kopf handlers (handlers), the in-memory store (store), the work queue
(queue) and the executor that turns a kind's plan into API calls (executor)."""
