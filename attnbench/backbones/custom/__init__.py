"""Your own backbone: registered modules attached to any PyTorch model at slots named by module-name patterns.

Two uses, one mechanism:

- `attach(model, "se", after=["layer*.*.bn3"])` puts a gate after every module whose name matches,
  and `attach(model, "dcn", replace_convs=["layer3.*.conv2"])` replaces the matched 3x3 convolutions,
  in place, in a model you built (the model is returned);
- an ablation file's backbone `{factory: "package.module:function", kwargs: {...}, slots: {after: [...],
  replace: [...]}}` (or `{name: "torchvision:NAME", ...}`, `{name: "timm:NAME", ...}`) becomes a registered
  backbone (`CustomBackbone.register`) that points name like any other. Its stages are the slot
  patterns, numbered 1..N in file order, and its blocks are the matches of a pattern in the order of
  `model.named_modules()`, so `stages`, `blocks` and per-stage hyperparameters work as for the built-ins.

Pattern rules (`matches`): a pattern is compared with the dotted names of `model.named_modules()`
(the names state-dict keys start with), component by component: `*` is any run of characters within
one component, `?` one character, `[abc]` / `[!abc]` a character class (`fnmatch.fnmatchcase`, so
case-sensitive), and a component that is exactly `**` stands for zero or more whole components. A
pattern matches whole names only: `layer1.*` matches `layer1.0`, never `layer1.0.conv1`.

Channels and map sizes are never typed: each slot is found by one forward on the meta device (shapes
only, nothing computed) with a recorder at every matched module. A gate goes after a module that runs
once per forward and returns an (N, C, H, W) map; a replaced module must be an `nn.Conv2d` with a 3x3
kernel, padding 1 (or 'same'), dilation 1, groups 1 and zero padding, since that is the convolution
every conv-replacing module stands in for (it gets the conv's in and out channels and its stride).

What the result is: an ordinary nn.Module. A gate after module X replaces X by `GateAfter(X, gate)`,
which runs X then the gate, so X's parameters move from `X.weight` to `X.module.weight` (loading a
state dict with the plain model's keys still works: `GateAfter` accepts them) and the gate is
`X.attention`; a replacing module takes X's place and name, and starts from X's weight where it has
one of the same shape (DCN's), as the built-in backbones give it theirs. Slot modules are flagged
with `mark_slot`, so every measurement finds them.
"""
from attnbench.backbones.custom.ablation_items import ITEM_KEYS, SLOT_KEYS, is_custom_item, parse_backbone_item
from attnbench.backbones.custom.attaching import attach
from attnbench.backbones.custom.backbone import CustomBackbone, custom_backbone, define_backbone
from attnbench.backbones.custom.discovery import CONV_RULE, GATE_POSITION, Discovery, Slot, discover
from attnbench.backbones.custom.factories import LIBRARIES
from attnbench.backbones.custom.installing import GateAfter, install
from attnbench.backbones.custom.patterns import KIND_OF_KEY, Pattern, check_pattern, matches, matching_names

__all__ = ["CONV_RULE", "GATE_POSITION", "ITEM_KEYS", "KIND_OF_KEY", "LIBRARIES", "SLOT_KEYS", "CustomBackbone",
           "Discovery", "GateAfter", "Pattern", "Slot", "attach", "check_pattern", "custom_backbone", "define_backbone",
           "discover", "install", "is_custom_item", "matches", "matching_names", "parse_backbone_item"]
