import pytest

from shared.plans import FREE, PRO, TEAM, LimitName, PlanCatalog, PlanName


@pytest.mark.parametrize(
    "model",
    ["gpt-3.5-turbo", "gpt-3.5-turbo-0125", "GPT-3.5-Turbo", "claude-3-haiku-20240307", "claude-3-5-haiku-latest",
     "claude-haiku-4-5", "openai/gpt-3.5-turbo", "anthropic/claude-3-5-haiku-latest"],
)
def test_free_allows_the_basic_model_families(model: str) -> None:
    assert FREE.allows_model(model)


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4.1-mini", "claude-3-5-sonnet-latest", "claude-opus-4", "o3", "haiku-poem"])
def test_free_refuses_other_models(model: str) -> None:
    assert not FREE.allows_model(model)


def test_paid_plans_allow_every_model() -> None:
    assert PRO.allows_model("claude-opus-4") and TEAM.allows_model("gpt-5")


def test_limits_are_those_of_the_price_list() -> None:
    assert FREE.limits == {LimitName.TOKENS_PER_MONTH: 100_000, LimitName.THREADS_PER_MONTH: 50,
                           LimitName.MESSAGES_PER_DAY: 100}
    assert not FREE.custom_keys and not FREE.overage
    assert PRO.price_cents == 2_000 and PRO.limit(LimitName.TOKENS_PER_MONTH) == 1_000_000
    assert PRO.limit(LimitName.THREADS_PER_MONTH) is None and PRO.limit(LimitName.MESSAGES_PER_DAY) == 1_000
    assert PRO.overage and PRO.overage_cents_per_1k_tokens == 1 and PRO.custom_keys
    assert TEAM.price_cents == 5_000 and set(TEAM.limits.values()) == {None} and TEAM.custom_keys


def test_catalog_maps_polar_products_to_plans_and_flags_unknown_ones() -> None:
    catalog = PlanCatalog(pro_product_id="prod_pro", team_product_id="prod_team")
    assert catalog.for_product("prod_pro") is PRO
    assert catalog.for_product("prod_team") is TEAM
    assert catalog.for_product("prod_other") is None
    assert catalog.product_id(PlanName.PRO) == "prod_pro" and catalog.product_id("free") is None
