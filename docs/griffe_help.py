"""Griffe extension for the API reference: a config field's ``metadata["help"]`` (PEFT's house style, and what
``HfArgumentParser`` prints) becomes that attribute's docstring, so the reference shows the same text."""

from __future__ import annotations

import dataclasses

import griffe


class HelpFromMetadata(griffe.Extension):
    def on_class_members(self, *, cls: griffe.Class, **kwargs) -> None:
        try:
            runtime = griffe.dynamic_import(cls.path)
        except ImportError:
            return
        if not dataclasses.is_dataclass(runtime):
            return
        for field in dataclasses.fields(runtime):
            help_text = field.metadata.get("help")
            member = cls.members.get(field.name)
            if help_text and member is not None and not member.docstring:
                member.docstring = griffe.Docstring(help_text, parent=member)
