from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_shows_a_screenshot_of_the_status_page_that_is_in_the_repo() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "](docs/screenshots/status-free.png)" in readme
    assert (ROOT / "docs" / "screenshots" / "status-free.png").stat().st_size > 10_000


def test_the_readme_gives_the_two_commands_first() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```sh", 1)[1].split("```", 1)[0]
    assert first_block.strip().splitlines()[0].startswith("make run")
    assert first_block.strip().splitlines()[1].startswith("make test")
