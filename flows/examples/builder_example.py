"""The diamond example built in Python: ``FlowBuilder`` gives the same Flow a YAML file does.

    from flows.examples.builder_example import build
    from taskplatform import submit_flow
    print(submit_flow(build(), {"x": 4}).wait(timeout=30))
"""

from taskplatform import Flow, FlowBuilder


def build(name: str = "diamond-py", description: str = "diamond, built in Python") -> Flow:
    b = FlowBuilder(name, description=description, inputs={"x": {"type": "integer", "default": 6}})
    start = b.step("start", "transform.set", values={"x": b.input("x")})
    double = b.step("double", "python.call", needs=[start], function="operator:add",
                    args=[start.output("x"), start.output("x")])
    square = b.step("square", "python.call", needs=[start], function="operator:mul",
                    args=[start.output("x"), start.output("x")])
    b.step("join", "transform.set", needs=[double, square],
           values={"double": double.output(), "square": square.output()})
    b.output("double", "${{ steps.join.output.double }}")
    b.output("square", "${{ steps.join.output.square }}")
    return b.build()
