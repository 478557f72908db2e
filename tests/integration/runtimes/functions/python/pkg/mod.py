def handler(event, context):
    return {"from": "pkg/mod"}
