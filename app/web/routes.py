"""The dashboard's pages: sign-in, the jobs table, one job, and the new-job form.

Pages are rendered on the server from the same services the REST API uses; the browser
script then keeps them live by calling the `/v1` API with the sign-in cookie, so there are
no JSON endpoints here.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.api.deps import SESSION_COOKIE, SessionDep
from app.auth import Principal, authenticate
from app.errors import NotFound
from app.schemas import Purpose
from app.services import files as file_service
from app.services import jobs as job_service
from app.web.render import render

router = APIRouter(include_in_schema=False)

JOBS_PER_PAGE = 20


def signed_in_tenant(request: Request, session: SessionDep) -> Principal | None:
    """The tenant whose key is in the sign-in cookie, or None."""
    key = request.cookies.get(SESSION_COOKIE)
    return authenticate(session, key) if key else None


WebTenantDep = Annotated[Principal | None, Depends(signed_in_tenant)]


def _safe_next(target: str | None) -> str:
    """Only a path on this site: never `//host` or `https://host`, so sign-in can't bounce
    a user elsewhere."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


def _to_sign_in(request: Request) -> RedirectResponse:
    query = urlencode({"next": request.url.path})
    return RedirectResponse(f"/?{query}", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/", response_class=HTMLResponse)
def home(
    request: Request,
    session: SessionDep,
    tenant: WebTenantDep,
    after: Annotated[str | None, Query(max_length=64)] = None,
    next_path: Annotated[str | None, Query(alias="next", max_length=500)] = None,
) -> Response:
    """The jobs table when signed in, else the sign-in form."""
    if tenant is None:
        return render(request, "login.html", {"next": _safe_next(next_path)})
    jobs, has_more = job_service.list_jobs(session, tenant.id, JOBS_PER_PAGE, after, None)
    context = {
        "tenant": tenant,
        "jobs": jobs,
        "has_more": has_more,
        "after": after or "",
        "per_page": JOBS_PER_PAGE,
    }
    return render(request, "jobs.html", context)


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    session: SessionDep,
    key: Annotated[str, Form(max_length=500)] = "",
    next_path: Annotated[str, Form(alias="next", max_length=500)] = "/",
) -> Response:
    """Check an API key and keep it in an HttpOnly cookie for the dashboard."""
    key = key.strip()
    if not key or authenticate(session, key) is None:
        message = "Paste your API key." if not key else "That API key is unknown or was revoked."
        context = {"error": message, "next": _safe_next(next_path)}
        return render(request, "login.html", context, status.HTTP_401_UNAUTHORIZED)
    response = RedirectResponse(_safe_next(next_path), status_code=status.HTTP_303_SEE_OTHER)
    response.set_cookie(
        SESSION_COOKIE,
        key,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
def logout() -> RedirectResponse:
    """Forget the sign-in cookie."""
    response = RedirectResponse("/", status_code=status.HTTP_303_SEE_OTHER)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str, session: SessionDep, tenant: WebTenantDep) -> Response:
    """One job: status, live curves, events, and the report once it succeeds."""
    if tenant is None:
        return _to_sign_in(request)
    try:
        job = job_service.with_waiting(session, job_service.public_job(session, tenant.id, job_id))
    except NotFound:
        return not_found(request, tenant, f"There is no job {job_id!r} in your account.")
    trials = []
    if job.kind == "search":
        trials = job_service.list_trials(session, job_service.get_job(session, tenant.id, job_id))
    return render(request, "job.html", {"tenant": tenant, "job": job, "trials": trials})


@router.get("/new", response_class=HTMLResponse)
def new_job_page(request: Request, session: SessionDep, tenant: WebTenantDep) -> Response:
    """Upload a teacher and a dataset (and a student model for hf_file), or pick uploaded
    ones, and submit a job."""
    if tenant is None:
        return _to_sign_in(request)
    files: dict[str, Any] = {
        purpose: file_service.list_files(session, tenant.id, purpose)
        for purpose in (Purpose.teacher.value, Purpose.dataset.value, Purpose.student.value)
    }
    return render(request, "new.html", {"tenant": tenant, "files": files})


def not_found(request: Request, tenant: Principal | None, message: str) -> Response:
    return render(
        request, "not_found.html", {"tenant": tenant, "message": message}, status.HTTP_404_NOT_FOUND
    )
