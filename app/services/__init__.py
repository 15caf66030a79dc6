"""The application's operations on the database, shared by the API and the worker.

Importing the package registers the flush hook that records a job's webhook delivery in
the same transaction as its end event (app.services.webhooks), so every process that can
end a job (API, worker, sweep) has it.
"""

from app.services import webhooks as webhooks
