"""Counts the words of the input "text" and names the most frequent one.

A plain Python file in Git: lint it, test it, review it like any other code. kustomize's
configMapGenerator puts it into a ConfigMap and the Flow reads it through spec.codeFrom.
"""

from collections import Counter

import flow_api


def count_words(text: str) -> Counter[str]:
    """The words of ``text``, lower-cased, without surrounding punctuation."""
    words = (w.strip(".,;:!?\"'()").lower() for w in text.split())
    return Counter(w for w in words if w)


def handler(system: flow_api.System, this: flow_api.Execution):
    text = this.get('input_value').get('text', '')
    counts = count_words(text)
    top = counts.most_common(1)
    this.log('Counted words', words=sum(counts.values()), distinct=len(counts))
    this.save(output_value={
        'words': sum(counts.values()),
        'distinct': len(counts),
        'top': top[0][0] if top else None,
    })
    return this.success(f'{sum(counts.values())} words')
