NAMESPACE = "omk-ray"  # the Ray namespace of every named actor the farm starts
