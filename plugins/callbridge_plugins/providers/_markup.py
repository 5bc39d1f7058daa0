"""Helpers of the providers that answer in an XML dialect (TwiML, Plivo XML, TeXML)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from callbridge.protocols import Markup

# Characters XML 1.0 cannot carry at all, even escaped.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'


def xml_text(value: str) -> str:
    """``value`` without the characters XML 1.0 cannot carry."""
    return _XML_INVALID.sub("", value)


def render(element: ET.Element) -> str:
    """``element`` as a document with the UTF-8 XML declaration."""
    return _XML_DECLARATION + ET.tostring(element, encoding="unicode")


def speak_and_hang_up(verb: str, message: str, media_type: str) -> Markup:
    """``<Response><{verb}>message</{verb}><Hangup/></Response>``."""
    response = ET.Element("Response")
    speech = ET.SubElement(response, verb)
    speech.text = xml_text(message)
    ET.SubElement(response, "Hangup")
    return Markup(body=render(response), media_type=media_type)
