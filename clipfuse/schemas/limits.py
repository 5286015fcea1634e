"""Every size limit of the public contract, in one place.

A limit that is hit produces an error naming the limit (``MAX_CAPTION_CHARS=...``),
so a user can find it here. Limits on what the *operator* controls (image bytes
fetched, pixels decoded, fetch time) live in :mod:`clipfuse.settings` instead,
with these values as defaults.
"""

from __future__ import annotations

# documents
MAX_ID_CHARS = 256
MAX_IMAGES_PER_DOCUMENT = 8
MAX_TITLE_CHARS = 512
MAX_CAPTION_CHARS = 4_096
MAX_DESCRIPTION_CHARS = 32_768
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_NAME_CHARS = 64
MAX_ATTRIBUTE_STRING_CHARS = 1_024
MAX_ATTRIBUTE_LIST_ITEMS = 64
MAX_URL_CHARS = 2_048
MAX_PATH_CHARS = 4_096
#: base64 text of an inline image (about 3/4 of this in bytes)
MAX_INLINE_IMAGE_CHARS = 8 * 1024 * 1024
MAX_DOCUMENTS_PER_MESSAGE = 1_000
#: length of a precomputed vector a document may carry (``vectors.image`` / ``vectors.text``)
MAX_VECTOR_DIM = 4_096

# catalogs (JSONL): checked on the raw line, before it is parsed
#: bytes of one catalog line (a document with the most inline images fits, with room to spare)
MAX_CATALOG_LINE_BYTES = MAX_IMAGES_PER_DOCUMENT * MAX_INLINE_IMAGE_CHARS + 1024 * 1024
#: objects / arrays inside one another in a document (a valid document needs 3)
MAX_JSON_DEPTH = 32

# searches
MAX_QUERY_TEXT_CHARS = 1_024
MAX_K = 1_000
MAX_OFFSET = 10_000
MAX_CANDIDATES = 10_000
MAX_FILTERS = 32
MAX_FILTER_VALUES = 256
#: conditions in one filter tree (``SearchRequest.where``) and its nesting depth in groups
MAX_FILTER_NODES = 256
MAX_FILTER_DEPTH = 8
MAX_WEIGHT = 100.0
MAX_RRF_K = 10_000.0
#: fields a search may facet on, and values returned per keyword / bool facet
MAX_FACETS = 16
MAX_FACET_VALUES = 1_000
#: payload fields a collapsed hit's variants may carry, and variants listed per hit
MAX_VARIANT_FIELDS = 16
MAX_VARIANTS = 100
#: boosts per search, and the largest boost weight (either sign)
MAX_BOOSTS = 16
MAX_BOOST_WEIGHT = 1_000.0
#: longest cursor token accepted (a real one is about 100 characters)
MAX_CURSOR_CHARS = 512

# merchandising rules (a rules file)
MAX_RULES = 1_000
MAX_RULE_ID_CHARS = 128
MAX_RULE_PATTERN_CHARS = 256
MAX_RULE_PATTERNS = 64
MAX_PINS_PER_RULE = 100
MAX_HIDDEN_PER_RULE = 1_000
MAX_PIN_POSITION = 1_000
#: a rules file larger than this is refused before it is parsed
MAX_RULES_FILE_BYTES = 4 * 1024 * 1024

# defaults for operator-controlled limits (see clipfuse.settings.ImageSettings)
DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
DEFAULT_FETCH_TIMEOUT_S = 10.0
