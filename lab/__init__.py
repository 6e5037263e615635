"""pen-lab: a docker-SDK lab that proves pen end to end and teaches it."""
