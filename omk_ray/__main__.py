from omk_ray.cli import app

app()
