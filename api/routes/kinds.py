"""Job kinds and the JSON schema of their params (the dashboard builds its forms from them)."""

from __future__ import annotations

from api.routes import keyed_router
from api.schemas import KindPublic
from jobs.kinds import registry

router = keyed_router("/kinds", "kinds")


@router.get("", response_model=list[KindPublic])
def list_kinds() -> list[KindPublic]:
    """Every registered job kind with its default queue and params schema."""
    return [
        KindPublic(name=s.name, description=s.description, queue=s.queue, params_schema=s.params.model_json_schema())
        for s in sorted(registry().values(), key=lambda s: s.name)
    ]
