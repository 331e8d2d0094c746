"""CLIP features on disk: the feature-store format (:mod:`.store`) and the cache pipeline that
fills it from frames or videos (:mod:`.cache`)."""
